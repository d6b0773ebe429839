"""The networks headstart trains and the unknown score they carry."""
