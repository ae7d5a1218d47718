"""fxbench.train"""
