"""The serving core: a request's bytes in, scores out, with no HTTP (nothing here imports FastAPI).

    settings   every RANKER_* setting
    codec      body -> validated values -> tensors (one per loaded model)
    routing    user -> variant (default or A/B bucket)
    build      every variant of a model (the engine, on the schema's example call)
    loading    one version loaded: every variant built, checked against VanI and warmed (a ServingModel)
    runtime    what serves now (model, routing, generation), swapped whole on reload; memory: a build's leftovers
    scorer     one request end to end, each stage timed
    shadow, admission, metrics, errors, example_request

service/api/ puts HTTP around it: route -> scorer -> codec -> router -> engine module.
"""
