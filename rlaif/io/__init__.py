"""Files on disk and plumbing every layer uses: input records and their schemas (records,
candidate_rows), crash-safe stage files and stage resume (store), seeds, YAML line numbers, log, redact (credentials out of URLs) and diskfull (a full disk named in one line)."""
