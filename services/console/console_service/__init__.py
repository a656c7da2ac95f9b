"""jobpipe's web console: the pipeline live, its dead letters, re-drive from the browser."""
