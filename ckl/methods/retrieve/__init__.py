"""Methods that leave the weights alone and put knowledge in the prompt from an index:
`rag` (retrieval over the fact store)."""
