"""Stage glue: the only modules besides ``medsss.run`` that read Hydra configs.

Each stage instantiates the plain objects its config describes and runs them.
"""
