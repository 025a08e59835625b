"""Search your pages: an index of page embeddings in an embedded vector database (LanceDB), queried from the command
line, served as a local web page, and built by several processes at once."""
