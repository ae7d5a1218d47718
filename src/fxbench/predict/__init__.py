"""fxbench.predict"""
