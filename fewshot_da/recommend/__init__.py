"""`fewshot-da recommend`: which strategy to fine-tune with, and how much target data, from the user's own few
labelled target scans (internal validation, ranking with intervals, a learning curve, the shift map)."""
