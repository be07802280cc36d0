"""CPython's interpreter structures on x86_64 (LP64), per minor version.

Offsets of the fields snapcore reads to list Python threads, their frames and
the locks they wait on, and the sizes of the structures pystack copies whole
(so that a --mini core keeps them).  They were read from the DWARF of
libpython 3.11.7, 3.12.1 and 3.13.0 (gdb `ptype /o`, and `&((T *)0)->field`);
tests/unit/test_why_units.py checks them against the libpythons installed.
CPython keeps these layouts within a minor version.

Only 64-bit processes are described: an i386 Python process gets no Python
stacks from snapcore's own reader.
"""

from dataclasses import dataclass

# _PyInterpreterFrame.owner (Include/internal/pycore_frame.h)
FRAME_OWNED_BY_CSTACK = 3  # 3.12+: a shim frame, not shown


@dataclass(frozen=True)
class CPythonLayout:
    version: tuple
    # _PyRuntimeState
    runtime_size: int
    runtime_interpreters_head: int
    runtime_gil: int  # 3.11: ceval.gil, embedded (-1: in the interpreter)
    runtime_tstate_current: int  # 3.11: gilstate.tstate_current (-1: none)
    # PyInterpreterState
    interp_size: int
    interp_next: int
    interp_id: int
    interp_threads_head: int
    interp_gil_ptr: int  # 3.12+: ceval.gil, a pointer (-1: in the runtime)
    interp_builtins: int
    interp_sysdict: int
    interp_modules: int
    interp_gc_collecting: int
    # PyThreadState (size: what the interpreter allocates per thread)
    tstate_size: int
    tstate_next: int
    tstate_interp: int
    tstate_thread_id: int  # pthread_self() of the thread
    tstate_native_thread_id: int  # its tid
    tstate_cframe: int  # 3.11, 3.12: _PyCFrame * (-1: none)
    cframe_current_frame: int
    tstate_current_frame: int  # 3.13: _PyInterpreterFrame * (-1: through cframe)
    # _PyInterpreterFrame
    frame_size: int  # localsplus starts here
    frame_code: int  # f_code / f_executable
    frame_previous: int
    frame_instr: int  # prev_instr (3.11, 3.12) / instr_ptr (3.13)
    frame_owner: int
    frame_owner_cstack: int  # the owner value of shim frames (-1: none)
    # PyCodeObject
    code_size: int
    code_argcount: int
    code_nlocalsplus: int
    code_stacksize: int
    code_firstlineno: int
    code_localsplusnames: int
    code_filename: int
    code_name: int
    code_qualname: int
    code_linetable: int
    code_adaptive: int  # the first code unit
    # str: PyASCIIObject / PyCompactUnicodeObject
    ascii_size: int
    compact_size: int
    # struct _gil_runtime_state
    gil_size: int
    gil_last_holder: int
    gil_locked: int
    # objects every version lays out alike
    ob_type: int = 8
    var_size: int = 16  # PyVarObject.ob_size
    str_length: int = 16
    str_state: int = 32
    bytes_data: int = 32
    tuple_items: int = 24
    type_name: int = 24  # PyTypeObject.tp_name
    cfunc_self: int = 24  # PyCFunctionObject.m_self (a bound builtin method)
    lock_lock: int = 16  # lockobject.lock_lock / rlockobject.rlock_lock
    rlock_owner: int = 24  # rlockobject.rlock_owner: the owner's thread ident
    rlock_count: int = 32
    lock_size: int = 40
    rlock_size: int = 48
    frame_stacktop: int = 64  # int: the value stack's depth (-1 while the frame runs)


PY311 = CPythonLayout(
    version=(3, 11),
    runtime_size=166688,
    runtime_interpreters_head=40,
    runtime_gil=360,
    runtime_tstate_current=576,
    interp_size=107752,
    interp_next=0,
    interp_id=48,
    interp_threads_head=16,
    interp_gil_ptr=-1,
    interp_builtins=912,
    interp_sysdict=904,
    interp_modules=888,
    interp_gc_collecting=848,
    tstate_size=360,
    tstate_next=8,
    tstate_interp=16,
    tstate_thread_id=152,
    tstate_native_thread_id=160,
    tstate_cframe=56,
    cframe_current_frame=8,
    tstate_current_frame=-1,
    frame_size=72,
    frame_code=32,
    frame_previous=48,
    frame_instr=56,
    frame_owner=69,
    frame_owner_cstack=-1,
    code_size=192,
    code_argcount=56,
    code_nlocalsplus=76,
    code_stacksize=68,
    code_firstlineno=72,
    code_localsplusnames=96,
    code_filename=112,
    code_name=120,
    code_qualname=128,
    code_linetable=136,
    code_adaptive=184,
    ascii_size=48,
    compact_size=72,
    gil_size=208,
    gil_last_holder=8,
    gil_locked=16,
)

PY312 = CPythonLayout(
    version=(3, 12),
    runtime_size=459944,
    runtime_interpreters_head=40,
    runtime_gil=-1,
    runtime_tstate_current=-1,
    interp_size=383552,
    interp_next=0,
    interp_id=8,
    interp_threads_head=72,
    interp_gil_ptr=384,
    interp_builtins=360,
    interp_sysdict=352,
    interp_modules=944,
    interp_gc_collecting=312,
    tstate_size=288,
    tstate_next=8,
    tstate_interp=16,
    tstate_thread_id=136,
    tstate_native_thread_id=144,
    tstate_cframe=56,
    cframe_current_frame=0,
    tstate_current_frame=-1,
    frame_size=72,
    frame_code=0,
    frame_previous=8,
    frame_instr=56,
    frame_owner=70,
    frame_owner_cstack=FRAME_OWNED_BY_CSTACK,
    code_size=200,
    code_argcount=52,
    code_nlocalsplus=72,
    code_stacksize=64,
    code_firstlineno=68,
    code_localsplusnames=96,
    code_filename=112,
    code_name=120,
    code_qualname=128,
    code_linetable=136,
    code_adaptive=192,
    ascii_size=40,
    compact_size=56,
    gil_size=208,
    gil_last_holder=8,
    gil_locked=16,
)

PY313 = CPythonLayout(
    version=(3, 13),
    runtime_size=283320,
    runtime_interpreters_head=632,
    runtime_gil=-1,
    runtime_tstate_current=-1,
    interp_size=194968,
    interp_next=7264,
    interp_id=7272,
    interp_threads_head=7344,
    interp_gil_ptr=16,
    interp_builtins=7648,
    interp_sysdict=7640,
    interp_modules=7656,
    interp_gc_collecting=7600,
    tstate_size=336,  # _PyThreadStateImpl
    tstate_next=8,
    tstate_interp=16,
    tstate_thread_id=152,
    tstate_native_thread_id=160,
    tstate_cframe=-1,
    cframe_current_frame=-1,
    tstate_current_frame=72,
    frame_size=72,
    frame_code=0,
    frame_previous=8,
    frame_instr=56,
    frame_owner=70,
    frame_owner_cstack=FRAME_OWNED_BY_CSTACK,
    code_size=208,
    code_argcount=52,
    code_nlocalsplus=72,
    code_stacksize=64,
    code_firstlineno=68,
    code_localsplusnames=96,
    code_filename=112,
    code_name=120,
    code_qualname=128,
    code_linetable=136,
    code_adaptive=200,
    ascii_size=40,
    compact_size=56,
    gil_size=208,
    gil_last_holder=8,
    gil_locked=16,
)

LAYOUTS = {lay.version: lay for lay in (PY311, PY312, PY313)}
SUPPORTED = tuple(sorted(LAYOUTS))


def layout_for(version):
    """The layout of CPython (major, minor), or None when snapcore has none."""
    return LAYOUTS.get(tuple(version[:2]))
