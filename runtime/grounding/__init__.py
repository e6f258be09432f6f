"""runtime/grounding"""
