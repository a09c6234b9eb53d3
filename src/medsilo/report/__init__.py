"""Run directory, metrics log and the HTML report (reads fed/privacy, never drives them)."""
