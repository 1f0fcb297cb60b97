"""`rlaif review`: people check a sample of the judge's pairs in the browser (sampler `items`, server
`app`); the figures from their labels are `stats` and `report`. File formats: `rlaif.io.review_files`."""
