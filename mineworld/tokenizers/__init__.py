"""Image tokenizers: frames <-> grids of code ids, one interface for every model."""
