"""fxbench.report"""
