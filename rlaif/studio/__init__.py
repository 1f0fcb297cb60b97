"""`rlaif rubric studio`: a local web page to edit a rubric and watch the judge react.

`files` (the rubrics folder: safe paths, lint of unsaved text, atomic saves), `engine` (the warm,
cached judge and background jobs), `app` (the Starlette app and its token gate), `static/` (the
page: HTML, plain JS, CSS; no build step).
"""
