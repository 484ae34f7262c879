"""The backend (moto's ``models.py``): the state of one local AHI and every statement that reads or writes it.

``store`` is the SQLite database and the frame and metadata files; ``datastores``, ``image_sets``,
``import_jobs`` and ``tags`` hold the queries on them; ``documents`` and ``levels`` are AHI's rules
for metadata documents (updates, copies, which level an attribute belongs to).
"""
