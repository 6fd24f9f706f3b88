"""Figures and cell diagrams."""
