"""fxbench.models"""
