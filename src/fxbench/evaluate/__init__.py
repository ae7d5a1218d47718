"""fxbench.evaluate"""
