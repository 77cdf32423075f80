"""The live worker: the Faust process, the link, and the pipeline behind it."""
