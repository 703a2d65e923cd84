"""Bundled samples (data files only): see README.md in this folder for sources and licences."""
