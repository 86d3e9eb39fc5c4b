"""Experiments: synthetic checks of the theory, real meta-dataset builders."""
