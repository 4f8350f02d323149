// end-to-end tests: filled in next
