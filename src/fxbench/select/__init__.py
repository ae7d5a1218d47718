"""fxbench.select"""
