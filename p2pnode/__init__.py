"""p2pnode"""
