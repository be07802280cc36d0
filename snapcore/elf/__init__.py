"""ELF core file structures, notes and the streaming layout/writer."""
