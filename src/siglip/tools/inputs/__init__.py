"""Inputs: which files are images, WebDataset .tar shards, and decode-or-skip loading."""
