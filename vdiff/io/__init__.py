"""I/O helpers shared by the library, data_prep and eval: atomic files, hashing, video."""
