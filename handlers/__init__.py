"""The pgml functions, with no knowledge of the wire protocol."""
