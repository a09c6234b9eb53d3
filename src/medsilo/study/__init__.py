"""The study: one TOML file, validated once, and the Python API that runs it."""
