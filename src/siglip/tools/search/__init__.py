"""Search: the persistent image index and what it is made of.

- `index.py`: `SearchIndex` (build, update, import, search) and `Hit`;
- `store.py`: `VectorStore`, the SQLite records (also the journal of `siglip embed`), file states, the path
  rule (`stored_path`) and atomic file replacement;
- `ann.py`: the approximate index types over faiss and the recall each build reaches;
- `fingerprint.py`: the one fingerprint of a model's weights (the index and the Ray engine record it);
- `page.py` and `thumbnails.py`: the HTML page of results and the thumbnails it and the server show.

Nothing is imported here: the journal of `siglip embed` (`store.py`) loads without the index or faiss.
"""
