"""What musicfs ships for those who extend it: the contract suite every origin kind passes.

Imported by test code only (it needs pytest); a mount never imports it.
"""
