"""A trained model behind a web page and a JSON API (``mat-effnet-serve``).

Owns the HTTP side of serving: the upload limits and checks, the bounded
queue in front of the one worker thread that calls the model, the stage
progress of a prediction, and the page's own assets (``static/``: HTML, CSS
and plain JavaScript, no outside host). What a prediction is comes from
`mat_effnet.serving.classifier.VideoClassifier`; the answer of
``POST /v1/predict`` is its ``Prediction.to_dict``, the object
``mat-effnet-predict --json`` prints.

`serve_settings` and `jobs` import no web framework; `app` imports FastAPI, the
``[serve]`` extra, so that ``import mat_effnet`` never needs it.

May import: every room of `mat_effnet` but `benchmark`.
"""
