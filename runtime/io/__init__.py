"""runtime/io"""
