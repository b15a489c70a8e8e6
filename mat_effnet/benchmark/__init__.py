"""`mat-effnet-benchmark`'s measurements, one module per topic."""
