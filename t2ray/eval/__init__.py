"""Evaluation harness: accuracy with confidence intervals, tables, plots."""
