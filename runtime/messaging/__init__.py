"""runtime/messaging"""
