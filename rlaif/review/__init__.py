"""`rlaif review`: people check a sample of the judge's pairs; the figures and uses of their labels."""
