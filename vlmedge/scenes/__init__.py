"""vlmedge/scenes"""
