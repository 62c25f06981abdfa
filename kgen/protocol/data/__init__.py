"""Packed tag lists (see NOTICE) and the script that packs them (``pack_tags``)."""
