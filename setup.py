from setuptools import find_packages, setup

setup(
    name="snapcore",
    version="0.1.0",
    description="gdb-compatible ELF core dumps of live Linux processes, without killing them",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["snapcore", "snapcore.*"]),
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build_shim.py:ffibuilder"],
    install_requires=["cffi>=1.15", "pyelftools>=0.29"],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "pytest-timeout>=2",
            "pystack>=1.3",
            "drgn>=0.0.25",
            "zstandard>=0.21",
            "ruff>=0.6",
        ],
        "zstd": ["zstandard>=0.21"],
    },
    entry_points={
        "console_scripts": ["snapcore = snapcore.cli:main"],
        # inactive unless --snapcore-timeout / snapcore_timeout / the marker is used
        "pytest11": ["snapcore = snapcore.pytest_plugin"],
    },
    zip_safe=False,
)
