"""What the data stages (ingest, clean, augment) share, and what every later stage reads tables with.

    sources       read a source: a local or remote CSV, Parquet or JSON-lines file or folder, an image folder
    budget        ingest's label budget: the classes kept, and a seeded sample of k rows per class
    contract      the data contract checked at ingest, the profile and drift report
    selection     clean's row selection and split, run by clean and, as the gate's check, by ingest
    tables        table I/O with declared schemas (Parquet, Arrow IPC), atomic writes, hashes
    hashing       row hashes and the hash-based split that adding rows never moves
    transform     clean's fitted preprocessing (imputation, scaling, categories), applied again by predict
    example_data  example sources of every kind, made from what scikit-learn ships
"""
