"""Benchmarks, load generators and process launchers: tooling, never imported by the product.

`python -m bench {ml,pipeline,load,ingest}` (what `make bench*` runs). The commands that
use the portal set Django up themselves; `ml` needs no database.
"""
