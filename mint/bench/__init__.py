"""`mint bench …` workloads. Part of the face (like the CLI): they may drive replay/ and actors/."""
