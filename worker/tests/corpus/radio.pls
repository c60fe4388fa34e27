[playlist]
NumberOfEntries=2
File1=http://radio.example/one.mp3
Title1=Station One
Length1=-1
File2=http://radio.example/two.ogg
Title2=Station Two
Version=2
