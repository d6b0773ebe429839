"""Reading, checking and splitting data: image folders and CSVs, text tables, labels, splits (torch only where images become tensors)."""
