"""Resumable real meta-dataset builder."""
