"""Scoring a task with any engine (harness), statistics, and the result rows and tables."""
