"""crdt"""
