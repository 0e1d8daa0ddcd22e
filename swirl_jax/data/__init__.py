"""Questions, benchmark loaders, built-in tasks, trajectory records and their files."""
