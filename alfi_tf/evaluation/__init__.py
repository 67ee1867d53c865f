"""Evaluation against exact references: metrics, figures, reports."""
