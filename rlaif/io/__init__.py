"""Files on disk: input records and their schemas, resumable stage files, seeds."""
