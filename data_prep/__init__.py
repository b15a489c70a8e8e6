"""Data preparation: raw videos -> frames + TV-L1 flow -> sharded TFRecords."""
